"""PRAM, the privacy risk assessment module: what in a dataset is sensitive, and how risky training on it is.

  detectors   value detectors with validity rules (Luhn, mod-97, SSN ranges, ...), whole values and free text
  vocabulary  given names, special-category vocabularies
  categories  kinds of personal data, their category (direct, quasi, special), HIPAA identifiers, column-name rules
  classify    column findings from names, sampled values and the spec's declarations
  scan        one streaming pass over CSV/Parquet sources in bounded memory: sample, counts, classes
  kanon       equivalence classes, k-anonymity and uniqueness (in memory, or spilled to disk)
  score       the six weighted components of the score
  report      RiskReport (JSON and readable summary) and IdentifierInFeatures
  assess      the entry points: the pipeline's assess stage, a spec's source, any file
  suggest     Great Expectations suites from a scan
  cli         `ppmlops risk scan` and `ppmlops risk suggest`
"""
