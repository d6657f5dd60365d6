"""What the SQL backends share: the datastore protocol and the recorders
written once, each backend supplying its SQL text through a small dialect."""
