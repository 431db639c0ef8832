"""Why a probe run or a source item failed: the one ``Reason`` list.

A public contract (docs/metrics.md): alert rules and dashboards match on these
values, so members are added freely and never renamed.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a probe run or a source item failed.  A public contract: alert rules and
    dashboards match on these values, so add freely but never rename."""

    OK = "ok"
    # network and handshake
    DNS_ERROR = "dns_error"
    CONNECT_REFUSED = "connect_refused"
    CONNECT_TIMEOUT = "connect_timeout"
    CONNECT_FAILED = "connect_failed"  # unreachable network or host, other socket errors
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    HANDSHAKE_FAILED = "handshake_failed"
    PROTOCOL_ERROR = "protocol_error"
    STARTTLS_FAILED = "starttls_failed"
    # certificate and chain
    CERT_EXPIRED = "cert_expired"
    CERT_NOT_YET_VALID = "cert_not_yet_valid"
    HOSTNAME_MISMATCH = "hostname_mismatch"
    UNTRUSTED_ROOT = "untrusted_root"
    SELF_SIGNED = "self_signed"
    INCOMPLETE_CHAIN = "incomplete_chain"
    CHAIN_INVALID = "chain_invalid"  # complete and anchored, and still fails validation
    REVOKED = "revoked"
    # client authentication and authorisation
    CLIENT_CERT_REQUIRED = "client_cert_required"
    CLIENT_CERT_REJECTED = "client_cert_rejected"
    HTTP_UNAUTHORIZED = "http_unauthorized"
    HTTP_FORBIDDEN = "http_forbidden"
    HTTP_UNEXPECTED_STATUS = "http_unexpected_status"
    HTTP_UNEXPECTED_BODY = "http_unexpected_body"  # the body fails a configured regexp
    HTTP_UNEXPECTED_HEADER = "http_unexpected_header"  # a header fails a configured regexp
    # revocation infrastructure
    OCSP_UNAVAILABLE = "ocsp_unavailable"
    OCSP_BAD_RESPONSE = "ocsp_bad_response"
    OCSP_UNAUTHORIZED_SIGNER = "ocsp_unauthorized_signer"
    OCSP_STALE = "ocsp_stale"
    OCSP_UNKNOWN_CERTIFICATE = "ocsp_unknown_certificate"  # the responder answered "unknown"
    CRL_UNAVAILABLE = "crl_unavailable"
    CRL_BAD_SIGNATURE = "crl_bad_signature"
    CRL_STALE = "crl_stale"
    CRL_TOO_LARGE = "crl_too_large"
    # reading sources (files, Secrets, bundles)
    READ_ERROR = "read_error"
    PERMISSION_DENIED = "permission_denied"
    NOT_FOUND = "not_found"
    BROKEN_SYMLINK = "broken_symlink"
    SYMLINK_LOOP = "symlink_loop"
    NOT_REGULAR_FILE = "not_regular_file"
    FILE_TOO_LARGE = "file_too_large"
    TOO_MANY_FILES = "too_many_files"
    TOO_MANY_TARGETS = "too_many_targets"  # discovered endpoints beyond max_targets, left out
    EMPTY_FILE = "empty_file"
    NO_CERTIFICATE = "no_certificate"
    PARSE_ERROR = "parse_error"
    MALFORMED_CERTIFICATE = "malformed_certificate"
    DUPLICATE_CERTIFICATE = "duplicate_certificate"
    BAD_PASSWORD = "bad_password"
    KDF_TOO_EXPENSIVE = "kdf_too_expensive"  # a PKCS#12 asking for absurd key derivation work; not opened
    # expected identity
    SAN_MISMATCH = "san_mismatch"
    WRONG_ISSUER = "wrong_issuer"
    WEAK_KEY = "weak_key"
    WEAK_SIGNATURE = "weak_signature"  # MD5 or SHA-1 on a certificate whose signature is checked
    EKU_MISMATCH = "eku_mismatch"
    VALIDITY_TOO_LONG = "validity_too_long"
    # APIs (Kubernetes, CAs)
    API_UNAUTHORIZED = "api_unauthorized"
    API_FORBIDDEN = "api_forbidden"
    API_ERROR = "api_error"
    # certificate authorities (the ca kind)
    CA_BAD_RESPONSE = "ca_bad_response"  # the CA answered, but not what its API promises
    ISSUANCE_REFUSED = "issuance_refused"  # the CA declined to issue (a 4xx other than 401/403)
    ISSUED_CERT_INVALID = "issued_cert_invalid"  # the issued certificate does not chain to the published roots
    VALIDITY_MISMATCH = "validity_mismatch"  # the issued certificate's lifetime is not what was asked
    PROVISIONER_NOT_FOUND = "provisioner_not_found"  # step-ca lists no JWK provisioner of that name
    CREDENTIAL_UNAVAILABLE = "credential_unavailable"  # the password/key file or variable cannot be read
    # ACME (RFC 8555) issuance: the problem types that say what broke
    RATE_LIMITED = "rate_limited"  # rateLimited: the CA will not issue before Retry-After
    BAD_NONCE = "bad_nonce"  # badNonce, still after retries with fresh nonces
    UNAUTHORIZED = "unauthorized"  # the account may not act: unauthorized, deactivated, terms to accept, EAB
    ORDER_INVALID = "order_invalid"  # the order became invalid (finalize failed) or never became ready
    CHALLENGE_FAILED = "challenge_failed"  # the CA could not validate a challenge (or none could be answered)
    # ours
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INTERNAL_ERROR = "internal_error"
