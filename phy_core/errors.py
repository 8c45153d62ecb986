"""Exceptions that carry a message meant for the user."""


class PhyError(Exception):
    """An error in the user's input or environment, shown without a traceback by the CLI."""


class PluginError(PhyError):
    """A plugin could not be loaded, registered, or gave an invalid contribution."""
