package main

import _ "embed"

// page is the example page.
//
//go:embed index.html
var page []byte
