"""The suite's options, shared by the pytest plugin and the command line (no pytest import)."""

DEFAULT_MAX_EXAMPLES = 25

# (option, environment variable, help)
OPTIONS = (
    ("--backend", "HCREF_BACKEND", "backend under test, MODULE[:ATTR] (ATTR defaults to 'backend')"),
    ("--device", "HCREF_DEVICE", "device name passed to backend.asarray (default cpu)"),
    ("--dtypes", "HCREF_DTYPES", "comma-separated dtypes (default: all the backend supports on the device)"),
    ("--max-examples", "HCREF_MAX_EXAMPLES", f"Hypothesis examples per test (default {DEFAULT_MAX_EXAMPLES})"),
    ("--seed", "HCREF_SEED", "Hypothesis seed (default: derandomized, the same examples every run)"),
    ("--xfails-file", "HCREF_XFAILS_FILE", "file of test-id prefixes to mark xfail"),
    ("--skips-file", "HCREF_SKIPS_FILE", "file of test-id prefixes to skip"),
    ("--report-json", "HCREF_REPORT_JSON", "write the JSON report to this path"),
)

NO_SHRINK = ("--no-shrink", "HCREF_NO_SHRINK", "report the first failing example without shrinking it")
