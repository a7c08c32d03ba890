"""What an operator watches a daemon by: its log lines (``logs``) and its Prometheus endpoint (``metrics``).

Both report what the daemons already count; neither keeps figures of its own.
"""
