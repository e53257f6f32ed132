"""What a discovered proxy is measured against: zero-cost measures, size statistics, reported
Auto-DAS proxies, and the comparison table.
"""
