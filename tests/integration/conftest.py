"""Integration tests share the session fixtures of tests/conftest.py (`trained`, `serve_port`)."""
