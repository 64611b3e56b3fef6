module github.com/knoxcall/dbproxy/examples/awssm

go 1.26.0

require github.com/knoxcall/dbproxy v0.0.0

require (
	go.yaml.in/yaml/v3 v3.0.6 // indirect
	golang.org/x/sync v0.25.0 // indirect
)

replace github.com/knoxcall/dbproxy => ../..
