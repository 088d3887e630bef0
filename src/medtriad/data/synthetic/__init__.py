"""The built-in demo cohort: a hidden patient state rendered as X-ray, ECG and report."""
