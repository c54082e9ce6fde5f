module github.com/diffugpt/diffugpt/examples/go

go 1.19

require github.com/diffugpt/diffugpt/bindings/go v0.0.0

replace github.com/diffugpt/diffugpt/bindings/go => ../../bindings/go
