"""The convert stage: bucket rules, Histograms.json revisions, the converter."""
