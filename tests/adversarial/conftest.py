"""The adversarial tests (issue 12) stand up the same loopback world as the uplink ⇄ station tests."""

from tests.test_uplink_station import world  # noqa: F401  (a fixture: two enrolled devices)
