//go:build tools

// Package tools records the Consul main package as a dependency of this module.
package tools

import _ "github.com/hashicorp/consul"
