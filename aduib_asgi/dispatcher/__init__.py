"""The thin RPC dispatcher app and its method registry."""

from aduib_asgi.dispatcher.app import RpcDispatcher, to_jsonable
from aduib_asgi.dispatcher.registry import MethodRegistry, MethodSpec, service

__all__ = ["MethodRegistry", "MethodSpec", "RpcDispatcher", "service", "to_jsonable"]
