"""bitsandbytes' notice about optional hub-fetched CPU kernels is kept out of users' sight."""

from __future__ import annotations

import logging

from agent.core.runtime import quiet_bitsandbytes_kernel_notice


def test_only_the_optional_kernel_notice_is_hidden(caplog):
    quiet_bitsandbytes_kernel_notice()
    quiet_bitsandbytes_kernel_notice()  # idempotent: one filter
    source = logging.getLogger("bitsandbytes.backends.cpu.ops")
    assert len(source.filters) == 1
    with caplog.at_level(logging.WARNING):
        source.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...", "no kernels")
        source.warning("something else went wrong")
    assert "kernels-community" not in caplog.text
    assert "something else went wrong" in caplog.text
