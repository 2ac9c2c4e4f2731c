"""Workers someone else started: an existing Dask scheduler (``cluster: {kind: address}``, ``geoseg run
--scheduler``). Its workers must see the output folder and run with geoseg's worker settings (README)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Literal

from pydantic import Field

from ..errors import GeosegError
from ..yamlfile import Strict


class AddressSpec(Strict):
    """A scheduler's address, ``tcp://host:8786`` (also tls, ucx, inproc)."""

    kind: Literal["address"] = "address"
    address: str = Field(pattern=r"^(tcp|tls|ucx|inproc)://")

    @contextmanager
    def client(self) -> Iterator[object]:
        from distributed import Client

        try:
            client = Client(self.address, timeout="10s")
        except (OSError, ValueError, TypeError) as err:  # unreachable, or not an address ("missing port number")
            raise GeosegError(f"--scheduler {self.address}: cannot connect ({str(err).splitlines()[0][:200]})") from None
        with client:
            yield client
