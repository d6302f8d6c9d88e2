"""HTTP plumbing for the API Gateway functions: event parsing, pages, one exception-to-answer map."""
