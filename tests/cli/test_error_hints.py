"""The hints the CLI adds to an "unavailable" error (``kv_cli.common.cluster_down_hint``): the local
cluster may be down (endpoints from ``kv cluster up``'s file), or, when a node hung up before any reply
and no TLS files were given, that the cluster may serve TLS (a TLS-only node closes a plain connection
without a word). A client with TLS files is told when the node speaks no TLS (OpenSSL's wrong version
number) or presents a certificate the client's CA did not sign. Any other error gets no hint."""
from __future__ import annotations

from kv_cli.common import Settings, cluster_down_hint
from kvstore.client import Unavailable  # (imported: the hint looks at the client modules loaded)
from kvstore.errors import RequestError

LOST = Unavailable("no answer from the cluster within 2s (connection failed: connection lost before the reply)")
REFUSED = Unavailable("no answer from the cluster within 2s (connection failed: [Errno 111] Connection refused)")


def test_a_plain_client_whose_connection_was_dropped_is_told_about_tls():
    settings = Settings(endpoints_text="127.0.0.1:9101")
    assert "if the cluster serves TLS: --cacert, --cert and --key" in cluster_down_hint(settings, LOST)
    assert cluster_down_hint(settings, REFUSED) == ""
    assert cluster_down_hint(settings, RequestError("bad", "bad_request")) == ""
    with_tls = Settings(endpoints_text="127.0.0.1:9101", cacert="ca.pem", cert="c.pem", key="c.key")
    assert cluster_down_hint(with_tls, LOST) == ""


def test_the_local_clusters_endpoints_get_the_cluster_up_hint():
    settings = Settings()
    settings.endpoints_from_default_cluster = True
    for error in (LOST, REFUSED):
        assert "the local cluster may be down" in cluster_down_hint(settings, error)


def test_a_deadline_too_short_for_any_answer_is_named_instead_of_the_cluster():
    """QA: ``--command-timeout 1ms`` against a running local cluster said it "may be down". When every
    node was reached and the deadline ran out, under 0.1 s, the hint names the deadline; a refused
    connection, or a longer deadline, keeps the hints above."""
    short = Settings(command_timeout=0.001)
    short.endpoints_from_default_cluster = True
    timed_out = Unavailable("no answer from the cluster within 0.001s (127.0.0.1:7001 did not answer)")
    no_leader = Unavailable("no node could serve the request within 0.001s (no leader)")
    for error in (timed_out, no_leader):
        assert cluster_down_hint(short, error) == " (--command-timeout 0.001s may be too short for an answer)"
    assert "the local cluster may be down" in cluster_down_hint(short, REFUSED)
    usual = Settings(command_timeout=5.0)
    usual.endpoints_from_default_cluster = True
    assert "the local cluster may be down" in cluster_down_hint(usual, timed_out)


def test_a_tls_client_is_told_when_the_node_speaks_no_tls_or_it_does_not_trust_the_node():
    plain_node = Unavailable("no answer from the cluster within 3s (connection failed: [SSL: WRONG_VERSION_NUMBER] "
                             "wrong version number (_ssl.c:1006))")
    foreign = Unavailable("no answer from the cluster within 3s (connection failed: [SSL: CERTIFICATE_VERIFY_FAILED] "
                          "certificate verify failed: unable to get local issuer certificate (_ssl.c:1006))")
    with_tls = Settings(endpoints_text="127.0.0.1:9101", cacert="ca.pem", cert="c.pem", key="c.key")
    assert "the node does not serve TLS" in cluster_down_hint(with_tls, plain_node)
    said = Unavailable("no node serves TLS (leave out the TLS files: ...) (connection failed: [SSL: "
                       "WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006))")
    assert cluster_down_hint(with_tls, said) == ""  # the client's error says it already
    assert "does not trust the node's certificate" in cluster_down_hint(with_tls, foreign)
    # (QA: an expired node certificate was blamed on --cacert)
    expired = Unavailable("no answer from the cluster within 3s (connection failed: [SSL: CERTIFICATE_VERIFY_FAILED] "
                          "certificate verify failed: certificate has expired (_ssl.c:1006))")
    assert "the node's certificate has expired" in cluster_down_hint(with_tls, expired)
    plain = Settings(endpoints_text="127.0.0.1:9101")
    assert cluster_down_hint(plain, plain_node) == "" and cluster_down_hint(plain, REFUSED) == ""


def test_ctrl_c_inside_trio_is_a_plain_keyboard_interrupt_not_a_group_traceback():
    """Trio wraps a Ctrl-C that lands in a nursery (kv bench) in a BaseExceptionGroup: reporting_errors
    turns it back into the KeyboardInterrupt the command line handles (no 70-line traceback)."""
    import pytest

    from kv_cli.common import reporting_errors

    with pytest.raises(KeyboardInterrupt) as caught:
        with reporting_errors(Settings()):
            raise BaseExceptionGroup("nursery", [KeyboardInterrupt()])
    assert type(caught.value) is KeyboardInterrupt
    with pytest.raises(BaseExceptionGroup):  # anything else in the group is not hidden
        with reporting_errors(Settings()):
            raise BaseExceptionGroup("nursery", [KeyboardInterrupt(), SystemExit(3)])
