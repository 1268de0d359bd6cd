"""What several test modules share: fakes of the fleet, servers to test against, ways to
watch an app. Test modules import from here (or tests/conftest.py), never from each other."""
