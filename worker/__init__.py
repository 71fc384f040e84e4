"""agentfleet workers: the Celery app, the budgeted agent loop, the tool gateway, tools and agents.

Importing this package imports nothing of Celery; the API uses its plain modules
(settings, keys, runs, kill switches, the agent registry) without loading task code.
"""
