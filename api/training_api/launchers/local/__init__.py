"""The local launcher: runs are child processes of the API on one machine."""

from training_api.launchers.local.exits import ExitAction, describe_exit, exit_action
from training_api.launchers.local.launcher import LocalLauncher
from training_api.launchers.local.process import settings_env

__all__ = ["ExitAction", "LocalLauncher", "describe_exit", "exit_action", "settings_env"]
