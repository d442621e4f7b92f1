"""Property tests for the URL guard: every blocked address in every textual form is
refused naming its range; any other text is refused with UnsafeURL or accepted only
when no parser the platform uses reads it as a blocked address."""

from __future__ import annotations

import os

from fuzzing import blocked_url, check_any_url, check_blocked_url, resolved_lists, url_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FAST = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=os.environ.get("FUZZ_RANDOM") is None,
)


@FAST
@given(case=blocked_url(), saas=st.booleans())
def test_no_textual_form_of_a_blocked_address_passes(case, saas: bool) -> None:
    url, always, _address = case
    check_blocked_url(url, always, saas)


@FAST
@given(url=url_text, resolved=resolved_lists, saas=st.booleans())
def test_any_text_is_refused_or_safe(url: str, resolved: list[str], saas: bool) -> None:
    check_any_url(url, resolved, saas)


@FAST
@given(case=blocked_url(), resolved=resolved_lists, saas=st.booleans())
def test_blocked_forms_mutated_are_refused_or_safe(case, resolved: list[str], saas: bool) -> None:
    url, _always, _address = case
    for variant in (url.upper(), url.replace("[", ""), url + "@8.8.8.8", url.replace("://", ":/")):
        check_any_url(variant, resolved, saas)
