"""Scrapes a /metrics page and parses it with the official Prometheus client's text parser, a
reader no one here wrote: a page it cannot parse fails the scrape.

Usage: prom_scrape.py URL

Prints one JSON object: {"content_type": ..., "samples": [{"name", "labels", "value"}, ...]}.
Exit 1 with the reason on stderr when the page cannot be fetched or parsed.
"""

import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main() -> int:
    url = sys.argv[1]
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            content_type = response.headers.get("Content-Type", "")
            text = response.read().decode("utf-8")
    except Exception as error:  # noqa: BLE001 - any failure to fetch is the answer
        print(f"cannot fetch {url}: {error}", file=sys.stderr)
        return 1
    try:
        samples = [
            {"name": s.name, "labels": s.labels, "value": s.value}
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]
    except Exception as error:  # noqa: BLE001 - a parse error is the finding
        print(f"prometheus_client cannot parse {url}: {error}\n{text}", file=sys.stderr)
        return 1
    json.dump({"content_type": content_type, "samples": samples}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
