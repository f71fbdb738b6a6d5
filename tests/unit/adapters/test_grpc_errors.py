"""Every domain error maps to exactly one gRPC status code, with details a client can read."""

from __future__ import annotations

import grpc
import psycopg
import pytest
from eventsourcing.persistence import MapperDeserialisationError, OperationalError
from google.rpc import error_details_pb2, status_pb2
from psycopg_pool import PoolTimeout

from crmcore.adapters.grpc.errors import status_for
from crmcore.domain.errors import (
    AlreadyExists,
    ConcurrencyConflict,
    InvalidValue,
    NotFound,
    RuleViolation,
    Unavailable,
)


def rich_status(status: grpc.Status) -> status_pb2.Status:
    (key, value), *_ = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    return status_pb2.Status.FromString(value)


class TestStatusFor:
    @pytest.mark.parametrize(
        ("error", "code"),
        [
            (InvalidValue("email", "not an e-mail address"), grpc.StatusCode.INVALID_ARGUMENT),
            (NotFound("customer", "c-42"), grpc.StatusCode.NOT_FOUND),
            (AlreadyExists("phone +819012345678 is taken"), grpc.StatusCode.ALREADY_EXISTS),
            (RuleViolation("cannot hold a queued call"), grpc.StatusCode.FAILED_PRECONDITION),
            (ConcurrencyConflict("stale etag"), grpc.StatusCode.ABORTED),
            (Unavailable("broker down"), grpc.StatusCode.UNAVAILABLE),
            (OperationalError("connection refused"), grpc.StatusCode.UNAVAILABLE),
            # Read models and the key vault meet a lost server as psycopg's own errors.
            (
                psycopg.OperationalError("server closed the connection unexpectedly"),
                grpc.StatusCode.UNAVAILABLE,
            ),
            (psycopg.InterfaceError("the connection is closed"), grpc.StatusCode.UNAVAILABLE),
            (PoolTimeout("couldn't get a connection after 30 s"), grpc.StatusCode.UNAVAILABLE),
            # A stored event its key does not open: damaged data, not a bug of the call.
            (
                MapperDeserialisationError("sealed data failed authentication"),
                grpc.StatusCode.DATA_LOSS,
            ),
            (ZeroDivisionError("oops"), grpc.StatusCode.INTERNAL),
        ],
    )
    def test_each_error_kind_has_its_code(self, error: Exception, code: grpc.StatusCode) -> None:
        assert status_for(error).code is code

    def test_invalid_value_names_the_field_in_bad_request_details(self) -> None:
        status = rich_status(status_for(InvalidValue("contact_points[1].value", "not a phone")))

        (detail,) = status.details
        bad_request = error_details_pb2.BadRequest()
        assert detail.Unpack(bad_request)
        (violation,) = bad_request.field_violations
        assert violation.field == "contact_points[1].value"
        assert violation.description == "not a phone"

    def test_unexpected_errors_do_not_leak_their_message(self) -> None:
        status = status_for(RuntimeError("password=hunter2 in a stack trace"))

        assert status.details == "internal error"

    def test_store_outage_says_to_retry(self) -> None:
        assert "retry" in status_for(OperationalError("server closed the connection")).details


class TestHugeInput:
    def test_a_message_echoing_huge_input_is_clipped_to_fit_the_metadata_limit(self) -> None:
        status = status_for(InvalidValue("purpose", f"unknown purpose {'😀' * 100_000!r}"))

        assert len(status.details) <= 200
        (_, details), *_ = status.trailing_metadata
        percent_encoded_message = len(status.details.encode()) * 3
        # The header block a client accepts by default is 8 KiB.
        assert percent_encoded_message + len(details) * 4 / 3 < 8_192
