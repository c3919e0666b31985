"""The test harness's servers live in omniq_tasks.testing (the demo and benchmarks use them too)."""

from omniq_tasks.testing import RedisClusterNodes, RedisServer, free_port, redis_server_binary

__all__ = ["RedisClusterNodes", "RedisServer", "free_port", "redis_server_binary"]
