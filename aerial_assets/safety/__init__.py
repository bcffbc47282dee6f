"""What stands between users' files and the product: one redaction function for every message, one YAML loader
with limits, one CSV writer that neutralises formulas, quarantine reasons counted for messages. No Dagster
import, and nothing imported here at package import (``errors`` imports :mod:`.redaction` alone)."""
