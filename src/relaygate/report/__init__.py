"""The report page (``reports/index.html``): :func:`relaygate.report.page.write_page`."""
