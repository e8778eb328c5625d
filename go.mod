module github.com/gatehouse-proxy/gatehouse

go 1.26.0

require (
	golang.org/x/net v0.62.0 // indirect
	gopkg.in/yaml.v3 v3.0.1 // indirect
)
