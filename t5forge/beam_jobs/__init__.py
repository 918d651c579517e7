"""Apache Beam jobs that build C4-style corpora from Common Crawl WET files."""
