"""Security of a flightlab server: real OIDC, Feast permissions, per-user staging, TLS, mTLS.

One file per concern: who calls (``test_authentication.py``), what each user
may do per endpoint (``test_permissions.py``), whose staged commands they are
(``test_ownership.py``), the token a client repo sends
(``test_client_repo_auth.py``), the error classes Feast's stock client gets
(``test_feast_error_classes.py``), and TLS and mTLS (``test_tls.py``).

Nothing is mocked. They share one loopback OpenID provider, its tokens, one
server repo with OIDC auth and Feast permissions (built with the real
``feast apply``) and one plaintext server: package-scoped fixtures in
``conftest.py``; the checks and clients they share are in
``tests/security_helpers.py``. A package (this file), so that those fixtures
are set up once for all of its files and torn down after the last.
"""
