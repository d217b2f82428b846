"""The suite's options, shared by the pytest plugin and the command line (no pytest import)."""

DEFAULT_MAX_EXAMPLES = 25
"""Examples per drawn test in the default profile."""

DEFAULT_PROFILE = "default"

# (option, environment variable, help)
OPTIONS = (
    ("--backend", "HCREF_BACKEND",
     "port under test, MODULE[:ATTR] or path/to/file.py[:ATTR] (ATTR defaults to 'backend')"),
    ("--device", "HCREF_DEVICE", "device name passed to backend.asarray (default cpu)"),
    ("--dtypes", "HCREF_DTYPES",
     "comma-separated dtypes and/or 'mixed' (float32 parameters on a half state); default: all the "
     "port supports on the device, and mixed"),
    ("--profile", "HCREF_PROFILE",
     "quick (5 examples), default (25; n, m up to 8) or thorough (200; n, m up to 16)"),
    ("--max-examples", "HCREF_MAX_EXAMPLES", "Hypothesis examples per drawn test (default: the profile's)"),
    ("--seed", "HCREF_SEED", "seed of the draws (default: fixed, the same examples every run)"),
    ("--xfails-file", "HCREF_XFAILS_FILE", "file of 'OP CHECK DTYPE' patterns to mark xfail (see the plugin doc)"),
    ("--skips-file", "HCREF_SKIPS_FILE", "file of 'OP CHECK DTYPE' patterns to skip (see the plugin doc)"),
    ("--report-json", "HCREF_REPORT_JSON", "write the JSON report to this path"),
    ("--report-md", "HCREF_REPORT_MD",
     "write the Markdown report to this path (default: beside the JSON report, with .md)"),
)

NO_SHRINK = ("--no-shrink", "HCREF_NO_SHRINK", "report each failure's first example without shrinking it")
