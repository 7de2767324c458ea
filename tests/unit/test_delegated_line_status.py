from llmops.gateway.batches.delegation import _line_status


def test_a_line_status_that_is_no_http_status_is_a_transient_failure():
    assert [_line_status(status) for status in (200, 400, 503)] == [200, 400, 503]
    assert [_line_status(status) for status in (None, "200", 2.0, True, 0, 700, [])] == [502] * 7
