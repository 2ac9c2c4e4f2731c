"""The one exception users see: a problem with their input or options, printed by the CLI as one line."""


class GeosegError(Exception):
    """Bad input or an impossible request. The CLI prints ``geoseg: error: <message>`` and exits with 2."""


class SceneTooCoarseError(GeosegError):
    """The scene's ground sample distance is far too coarse for the model to resolve buildings."""
