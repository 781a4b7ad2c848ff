"""The CA service: the asyncssh adapter, the channel protocol and its command table, executors, workers.

Speaks SSH; every certificate it hands out comes from ``Authority.issue``.
May import: everything below it (ca.app and lower); never ca.cli or ca.client.
"""
