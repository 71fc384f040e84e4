"""The deployment files: Dockerfiles, .dockerignore, docker-compose.yml, ops/ and ops/k8s/.

Static tests parse each file and assert the properties a deployment relies on (pinned bases,
non-root users, soft shutdown within the stop grace, memory limits that fit the per-child limit,
secrets as files, probes, autoscaling on the right Redis lists). hadolint, `docker-compose
config` and `kubectl kustomize` run when they are installed (.ci/run installs the first two).
The parsers they share are in helpers.py.

No Docker engine is needed: test_native_stack.py reads docker-compose.yml and starts api, the
worker replicas, tool-worker and flower from the file's own commands and environment, and the
images' ENV, as local processes against a real redis-server running ops/redis.conf. Container
names and paths are mapped to the host (native.py, `NativeStack`), nothing else is changed, so
the compose file cannot drift from what works.
"""
