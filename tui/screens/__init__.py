"""The TUI's screens; each one is a front end to public functions of `appliance`."""
from .chat import ChatScreen
from .data import DataScreen
from .home import HomeScreen
from .models import ModelsScreen
from .monitor import MonitorScreen
from .train import TrainScreen

__all__ = ["ChatScreen", "DataScreen", "HomeScreen", "ModelsScreen", "MonitorScreen", "TrainScreen"]
