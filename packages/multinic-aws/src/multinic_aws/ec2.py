"""The EC2 calls of ``aws-ipvlan``: find a NIC's ENI, assign and unassign its
secondary private IPs, through botocore with bounded retries and timeouts.

Every call goes through ``Ec2.call``, which turns botocore's failures into
multinic errors that say what was asked and what EC2 answered:

* throttled (``RequestLimitExceeded``...), a 5xx, or an endpoint that did not
  answer, after botocore's bounded retries: ``Ec2Busy`` (a ``TryAgainError``,
  CNI code 11);
* no credentials or no region: ``ConfigError``;
* anything else EC2 refused: ``Ec2Error`` (code and message of EC2's answer).

Nothing here takes an address from another interface: ``assign`` refuses an
address that any other ENI of the subnet holds, and asks EC2 with
``AllowReassignment=False`` so that a race is refused by EC2 too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, cast

import botocore.config
import botocore.exceptions
import botocore.session
from botocore.utils import IMDSRegionProvider

from multinic_core.errors import ConfigError, MultinicError, TryAgainError

log = logging.getLogger(__name__)

DEFAULT_MAX_ATTEMPTS = 4
"""Attempts per EC2 call, the first included (botocore ``standard`` retry mode)."""
DEFAULT_CONNECT_TIMEOUT_S = 2
DEFAULT_READ_TIMEOUT_S = 5

THROTTLING_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "SlowDown",
        "EC2ThrottledException",
    }
)
ENI_NOT_FOUND = "InvalidNetworkInterfaceID.NotFound"


class Ec2Error(MultinicError):
    """EC2 refused a call (the message has EC2's error code and message)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class Ec2Busy(TryAgainError):
    """EC2 throttled the call, failed transiently or did not answer, after every retry."""


class Ec2Api(Protocol):
    """The part of botocore's EC2 client that ``aws-ipvlan`` uses."""

    def describe_network_interfaces(self, **kwargs: Any) -> dict[str, Any]: ...

    def describe_subnets(self, **kwargs: Any) -> dict[str, Any]: ...

    def assign_private_ip_addresses(self, **kwargs: Any) -> dict[str, Any]: ...

    def unassign_private_ip_addresses(self, **kwargs: Any) -> dict[str, Any]: ...

    def get_paginator(self, operation_name: str) -> Any: ...


@dataclass(frozen=True)
class Ec2Settings:
    """Where and how to call EC2: the network's ``spec.plugin.args``.

    ``region`` and ``endpoint_url`` empty: botocore's own resolution
    (``AWS_DEFAULT_REGION``, the config file, then the instance
    metadata); credentials always come from botocore's chain (environment,
    files, container or instance role), never from the network.
    """

    region: str = ""
    endpoint_url: str = ""
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout: int = DEFAULT_READ_TIMEOUT_S

    KEYS: ClassVar[tuple[str, ...]] = (
        "region",
        "endpoint_url",
        "max_attempts",
        "connect_timeout",
        "read_timeout",
    )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Ec2Settings:
        """The settings a delegate config carries (its ``plugin`` keys, typed)."""
        defaults = cls()
        values = {key: config.get(key, getattr(defaults, key)) for key in cls.KEYS}
        for key in ("region", "endpoint_url"):
            if not isinstance(values[key], str):
                raise ConfigError(f"aws-ipvlan {key} {values[key]!r} must be a string")
        for key in ("max_attempts", "connect_timeout", "read_timeout"):
            value = values[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"aws-ipvlan {key} {value!r} must be a positive integer")
        return cls(**values)

    def botocore_config(self) -> botocore.config.Config:
        return botocore.config.Config(
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
        )

    def worst_case_s(self) -> float:
        """An upper bound of one call's duration: every attempt times out, full backoff."""
        backoff = sum(min(20, 1 << i) for i in range(self.max_attempts - 1))
        return float(self.max_attempts * (self.connect_timeout + self.read_timeout) + backoff)


@dataclass(frozen=True)
class Eni:
    """An elastic network interface, as far as address assignment needs it."""

    id: str
    mac: str
    subnet_id: str
    subnet_cidr: str
    primary_ip: str


class Ec2:
    """The EC2 calls of one driver instance: a client per settings, ENIs by MAC.

    Thread-safe (the agent calls the driver from worker threads).  An ENI's
    MAC address and subnet never change, so they are looked up once per MAC.
    """

    def __init__(
        self, session_factory: Callable[[], botocore.session.Session] = botocore.session.Session
    ) -> None:
        self._session_factory = session_factory
        self._lock = threading.Lock()
        self._session: botocore.session.Session | None = None
        self._clients: dict[Ec2Settings, Ec2Api] = {}
        self._enis: dict[tuple[Ec2Settings, str], Eni] = {}

    # ------------------------------------------------------------------ plumbing

    def client(self, settings: Ec2Settings) -> Ec2Api:
        with self._lock:
            client = self._clients.get(settings)
            if client is None:
                if self._session is None:
                    self._session = self._session_factory()
                session = self._session
                region = settings.region or session.get_config_variable("region")
                if not region and not _imds_disabled():
                    region = IMDSRegionProvider(session).provide()
                if not region:
                    raise ConfigError(
                        "aws-ipvlan has no AWS region: set spec.plugin.args.region, "
                        "or AWS_DEFAULT_REGION in the agent's environment"
                    )
                client = cast(
                    Ec2Api,
                    session.create_client(
                        "ec2",
                        region_name=str(region),
                        endpoint_url=settings.endpoint_url or None,
                        config=settings.botocore_config(),
                    ),
                )
                self._clients[settings] = client
            return client

    def call(self, settings: Ec2Settings, operation: str, **params: Any) -> dict[str, Any]:
        """One EC2 call by its Python name (``assign_private_ip_addresses``)."""
        method = getattr(self.client(settings), operation)
        with translated(_api_name(operation), settings):
            result: dict[str, Any] = method(**params)
        return result

    def _interfaces(self, settings: Ec2Settings, **params: Any) -> Iterator[dict[str, Any]]:
        """DescribeNetworkInterfaces, every page."""
        paginator = self.client(settings).get_paginator("describe_network_interfaces")
        with translated("DescribeNetworkInterfaces", settings):
            pages = list(paginator.paginate(**params))
        for page in pages:
            yield from page.get("NetworkInterfaces", [])

    # ------------------------------------------------------------------ ENIs

    def eni_of_mac(self, settings: Ec2Settings, mac: str) -> Eni:
        """The ENI whose MAC address is ``mac`` (the host NIC's); raises Ec2Error if none."""
        key = (settings, mac.lower())
        with self._lock:
            cached = self._enis.get(key)
        if cached is not None:
            return cached
        found = list(self._interfaces(settings, Filters=[_filter("mac-address", mac.lower())]))
        if len(found) != 1:
            raise Ec2Error(
                f"EC2 has {len(found)} network interfaces with MAC address {mac}, not one"
                + (": is this host an EC2 instance of that region?" if not found else "")
            )
        interface = found[0]
        subnet_id = interface["SubnetId"]
        subnets = self.call(settings, "describe_subnets", SubnetIds=[subnet_id])["Subnets"]
        eni = Eni(
            id=interface["NetworkInterfaceId"],
            mac=mac.lower(),
            subnet_id=subnet_id,
            subnet_cidr=subnets[0]["CidrBlock"],
            primary_ip=_primary_ip(interface),
        )
        with self._lock:
            self._enis[key] = eni
        log.info("ENI %s (subnet %s %s) has MAC %s", eni.id, subnet_id, eni.subnet_cidr, mac)
        return eni

    def forget(self, eni_id: str) -> None:
        """Drop a cached ENI (EC2 said it does not exist any more)."""
        with self._lock:
            for key in [k for k, v in self._enis.items() if v.id == eni_id]:
                del self._enis[key]

    def held(self, settings: Ec2Settings, eni_id: str) -> set[str] | None:
        """The private IPv4 addresses ``eni_id`` holds now; ``None`` if the ENI is gone."""
        try:
            found = self.call(settings, "describe_network_interfaces", NetworkInterfaceIds=[eni_id])
        except Ec2Error as e:
            if e.code == ENI_NOT_FOUND:
                self.forget(eni_id)
                return None
            raise
        return {a["PrivateIpAddress"] for i in found["NetworkInterfaces"] for a in _addresses(i)}

    def subnet_holders(self, settings: Ec2Settings, eni: Eni) -> dict[str, str]:
        """Every private IPv4 address of ``eni``'s subnet -> the ENI holding it.

        Only the ENIs of that subnet can hold its addresses, so only they are read
        (one DescribeNetworkInterfaces, paginated).  ``eni`` itself missing: the
        ENI was deleted (``Ec2Error`` with code ``InvalidNetworkInterfaceID.NotFound``).
        """
        found: dict[str, str] = {}
        seen = False
        for interface in self._interfaces(settings, Filters=[_filter("subnet-id", eni.subnet_id)]):
            seen = seen or interface["NetworkInterfaceId"] == eni.id
            for address in _addresses(interface):
                found[address["PrivateIpAddress"]] = interface["NetworkInterfaceId"]
        if not seen:
            self.forget(eni.id)
            raise Ec2Error(f"{ENI_NOT_FOUND}: ENI {eni.id} does not exist any more", ENI_NOT_FOUND)
        return found

    # ------------------------------------------------------------------ addresses

    def to_assign(self, settings: Ec2Settings, eni: Eni, ips: Sequence[str]) -> list[str]:
        """Those of ``ips`` that ``eni`` does not hold yet, to be assigned to it.

        Refuses (``ConfigError``) what EC2 would refuse: an address outside the
        ENI's subnet, one AWS reserves, the ENI's primary.  Refuses
        (``Ec2Error``) an address another interface holds: EC2 would move it
        to ``eni`` with ``AllowReassignment``, which is never done.
        """
        subnet = ipaddress.ip_network(eni.subnet_cidr)
        for ip in ips:
            if ipaddress.ip_address(ip) not in subnet:
                raise ConfigError(
                    f"pod address {ip} is not in subnet {eni.subnet_id} ({eni.subnet_cidr}) "
                    f"of ENI {eni.id}: aws-ipvlan pods take addresses of the host subnet "
                    "(spec.subnet empty, masterNets the VPC subnets)"
                )
            if ip == eni.primary_ip:
                raise ConfigError(f"pod address {ip} is the primary address of ENI {eni.id}")
            if ipaddress.ip_address(ip) in aws_reserved(subnet):
                raise ConfigError(
                    f"pod address {ip} is reserved by AWS in subnet {eni.subnet_id} "
                    f"({eni.subnet_cidr}: its first four and its last address); "
                    "list them in the ipam's excludeCIDRs"
                )
        holders = self.subnet_holders(settings, eni)
        taken = {ip: holders[ip] for ip in ips if holders.get(ip, eni.id) != eni.id}
        if taken:
            raise Ec2Error(
                "not reassigned (never taken from another interface): "
                + ", ".join(f"{ip} is assigned to {other}" for ip, other in sorted(taken.items())),
                "AddressInUse",
            )
        return [ip for ip in ips if ip not in holders]

    def assign(self, settings: Ec2Settings, eni: Eni, ips: Sequence[str]) -> None:
        """``AssignPrivateIpAddresses`` of ``ips`` to ``eni`` with ``AllowReassignment=False``."""
        if not ips:
            return
        try:
            self.call(
                settings,
                "assign_private_ip_addresses",
                NetworkInterfaceId=eni.id,
                PrivateIpAddresses=list(ips),
                AllowReassignment=False,
            )
        except Ec2Error as e:
            if e.code == ENI_NOT_FOUND:
                self.forget(eni.id)
                raise
            # A retried call whose first attempt was applied may be refused
            # as a duplicate: what counts is what the ENI holds now.
            try:
                now = self.held(settings, eni.id)
            except MultinicError:
                raise e from None
            if now is None or not set(ips) <= now:
                raise
            log.warning("EC2: %s on ENI %s although %s", ", ".join(ips), eni.id, e)
        log.info("EC2: %s assigned to ENI %s", ", ".join(ips), eni.id)

    def unassign(self, settings: Ec2Settings, eni_id: str, ips: Sequence[str]) -> list[str]:
        """Unassign those of ``ips`` that ``eni_id`` still holds (idempotent).

        :returns: the addresses unassigned (none when the ENI is gone or no longer holds them).
        """
        held = self.held(settings, eni_id)
        if not held:
            return []
        present = [ip for ip in ips if ip in held]
        if present:
            self.call(
                settings,
                "unassign_private_ip_addresses",
                NetworkInterfaceId=eni_id,
                PrivateIpAddresses=present,
            )
            log.info("EC2: %s unassigned from ENI %s", ", ".join(present), eni_id)
        return present


@contextlib.contextmanager
def translated(api: str, settings: Ec2Settings) -> Iterator[None]:
    """botocore's failures of one call (after its retries) as multinic errors."""
    try:
        yield
    except botocore.exceptions.ClientError as e:
        raise client_error(api, e) from e
    except (
        botocore.exceptions.ConnectTimeoutError,
        botocore.exceptions.ReadTimeoutError,
        botocore.exceptions.EndpointConnectionError,
        botocore.exceptions.ConnectionClosedError,
    ) as e:
        raise Ec2Busy(
            f"EC2 {api} failed: {type(e).__name__} after {settings.max_attempts} attempt(s): {e}"
        ) from e
    except botocore.exceptions.NoCredentialsError as e:
        raise ConfigError(
            f"EC2 {api}: no AWS credentials for the agent "
            "(environment, shared credentials file, container or instance role)"
        ) from e
    except botocore.exceptions.BotoCoreError as e:
        raise Ec2Error(f"EC2 {api} failed: {type(e).__name__}: {e}") from e


def client_error(api: str, error: botocore.exceptions.ClientError) -> MultinicError:
    """A multinic error for EC2's refusal, after botocore's retries."""
    response: Mapping[str, Any] = error.response
    details = response.get("Error", {})
    code = str(details.get("Code", "Unknown"))
    message = str(details.get("Message", ""))
    meta = response.get("ResponseMetadata", {})
    attempts = int(meta.get("RetryAttempts", 0)) + 1
    status = int(meta.get("HTTPStatusCode", 0))
    text = f"EC2 {api}: {code}: {message}".rstrip(": ")
    if code in THROTTLING_CODES or status >= 500:
        return Ec2Busy(f"{text} (after {attempts} attempt(s))")
    if code in ("AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId"):
        return ConfigError(f"{text}: the agent's AWS credentials may not do this")
    return Ec2Error(text, code)


def aws_reserved(subnet: ipaddress.IPv4Network | ipaddress.IPv6Network) -> set[Any]:
    """The addresses AWS keeps for itself in a VPC subnet: network, router, DNS,
    future use, and the last one."""
    return {subnet[i] for i in (0, 1, 2, 3, -1)}


def _api_name(operation: str) -> str:
    return "".join(part.capitalize() for part in operation.split("_"))


def _filter(name: str, value: str) -> dict[str, Any]:
    return {"Name": name, "Values": [value]}


def _addresses(interface: Mapping[str, Any]) -> list[dict[str, Any]]:
    addresses: list[dict[str, Any]] = interface.get("PrivateIpAddresses") or []
    return addresses


def _primary_ip(interface: Mapping[str, Any]) -> str:
    for address in _addresses(interface):
        if address.get("Primary"):
            return str(address["PrivateIpAddress"])
    return str(interface.get("PrivateIpAddress", ""))


def _imds_disabled() -> bool:
    return os.environ.get("AWS_EC2_METADATA_DISABLED", "false").lower() == "true"
