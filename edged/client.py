"""``from edged.client import Subscriber`` keeps working: the subscriber client moved to
`edged.api.client` with the package's layered layout (README, "Subscribing from Python")."""

from edged.api.client import *  # noqa: F403
from edged.api.client import __all__  # noqa: F401
