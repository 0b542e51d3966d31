"""Peer tests that fail against CompressionMiddleware by design: test pattern -> reason.

Each reason is explained in docs/deviations.md ("Compression: the peers' test
suites"). Patterns are fnmatch patterns on the test id (after ``::``).
"""

from __future__ import annotations

EXPECTED: dict[str, dict[str, str]] = {
    "starlette": {
        "test_gzip_ignored_for_small_responses*": "vary-always",
        "test_gzip_ignored_for_responses_with_encoding_set*": "vary-always",
        "test_gzip_default_exclude_content_types*": "vary-always",
        "test_gzip_custom_exclude_content_types*": "vary-always",
        "test_gzip_exclude_content_types_for_identity_client*": "vary-always",
        "test_gzip_exclude_content_types_matching*": "vary-always",
        "test_gzip_ignored_on_server_sent_events*": "sse-compressed",
        "test_gzip_streaming_response_emits_output_per_chunk*": "empty-messages",
    },
    "starlette-compress": {
        "test_compress_ignored_for_small_responses*": "vary-always",
        "test_compress_ignored_for_responses_with_encoding_set*": "vary-always",
        "test_status_and_range_bypasses*": "vary-always",
        "test_mixed_case_skip_small_pathsend_byte_identical": "vary-always",
        "test_compress_ignored_for_missing_content_type*": "blocklist",
        "test_compress_registered_content_type*": "blocklist",
        "test_ordinary_stream_brotli_no_mid_flush": "flush-per-message",
        "test_legacy_zstd_large_message_bounded_and_pledged": "flush-per-message",
        "test_repeated_start_raises": "runtime-error",
        "test_version_is_1_8_0": "peer-internals",
    },
}
