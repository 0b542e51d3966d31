"""Long-running tasks: the TaskService, its manager, and memory/Redis stores."""

from aduib_asgi.tasks.manager import TASK_KEY, TaskHandle, TaskManager, report_progress
from aduib_asgi.tasks.service import TaskService, install_task_service
from aduib_asgi.tasks.store import MemoryTaskStore, TaskEntry, TaskStore, store_from_uri

__all__ = [
    "TASK_KEY",
    "MemoryTaskStore",
    "TaskEntry",
    "TaskHandle",
    "TaskManager",
    "TaskService",
    "TaskStore",
    "install_task_service",
    "report_progress",
    "store_from_uri",
]
