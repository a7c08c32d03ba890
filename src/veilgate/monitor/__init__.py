"""What an operator watches a daemon by: its log lines (``logs``), its Prometheus endpoint
(``metrics``) and its status socket's answer (``status``).

Both report what the daemons already count; neither keeps figures of its own.
"""
