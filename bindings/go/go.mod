module github.com/diffugpt/diffugpt/bindings/go

go 1.19
