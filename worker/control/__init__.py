"""What operators and policies decide about runs and calls: the kill switches (killswitch.py),
each agent's policy and quotas (policy.py), canary rollouts (rollout.py), and calls that wait for
a human's approval (approvals.py)."""
