"""Launchers: how a recorded run is handed to something that trains it."""

from __future__ import annotations

from training_api.launchers.base import Launcher, LauncherUnavailable
from training_core.settings import Settings
from training_core.store.base import Store


def open_launcher(settings: Settings, store: Store) -> Launcher:
    """The launcher ``LAUNCHER`` names: ``kubernetes`` (TrainingRun resources) or ``local``."""
    if settings.launcher == "kubernetes":
        from training_api.launchers.kubernetes import KubernetesLauncher

        return KubernetesLauncher(settings.namespace)
    from training_api.launchers.local import LocalLauncher

    return LocalLauncher(settings, store)


__all__ = ["Launcher", "LauncherUnavailable", "open_launcher"]
