"""The lanes of a job besides plain synchronous sends: the flex tier (`flex`) and the Batch API (`batch`)."""
