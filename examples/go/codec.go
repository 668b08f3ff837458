package main

import (
	"fmt"

	protov1 "github.com/golang/protobuf/proto"
	protov2 "google.golang.org/protobuf/proto"
)

// protoCodec is the wire codec for this client's calls. Debian's grpc-go
// (golang-google-grpc-dev 1.33) marshals with github.com/golang/protobuf,
// and its dependency is satisfied by either golang-github-golang-protobuf-1-3-dev
// or -1-5-dev; apt picks 1.3, which cannot handle the APIv2 stubs that
// protoc-gen-go generates ("protobuf tag not enough fields" at run time).
// This codec marshals APIv2 messages (our stubs) with google.golang.org/protobuf
// and older APIv1 ones (Debian's grpc_health_v1) with golang/protobuf, so the
// client works with either package installed.
type protoCodec struct{}

func (protoCodec) Name() string { return "proto" }

func (protoCodec) Marshal(v interface{}) ([]byte, error) {
	switch m := v.(type) {
	case protov2.Message:
		return protov2.Marshal(m)
	case protov1.Message:
		return protov1.Marshal(m)
	}
	return nil, fmt.Errorf("cannot marshal %T: not a protobuf message", v)
}

func (protoCodec) Unmarshal(data []byte, v interface{}) error {
	switch m := v.(type) {
	case protov2.Message:
		return protov2.Unmarshal(data, m)
	case protov1.Message:
		return protov1.Unmarshal(data, m)
	}
	return fmt.Errorf("cannot unmarshal into %T: not a protobuf message", v)
}
