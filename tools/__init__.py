"""Development tools the test suite runs; not part of the relay package."""
