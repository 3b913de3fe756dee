"""The command line: how every script runs, and the options the scripts share."""
