// ONNX models, written without the onnx library: the messages of onnx/onnx.proto (IR version 7,
// the one opset 13 goes with) that an inference graph of float tensors needs, encoded with the
// hand-written protobuf writer (ProtobufWriter.swift). Field numbers, from onnx.proto:
//   ModelProto{ir_version=1 int64, producer_name=2, producer_version=3, domain=4, model_version=5,
//     doc_string=6, graph=7 GraphProto, opset_import=8 repeated OperatorSetIdProto{domain=1, version=2},
//     metadata_props=14 repeated StringStringEntryProto{key=1, value=2}}
//   GraphProto{node=1, name=2, initializer=5 TensorProto, doc_string=10, input=11, output=12 ValueInfoProto}
//   NodeProto{input=1, output=2 repeated string, name=3, op_type=4, attribute=5, doc_string=6, domain=7}
//   AttributeProto{name=1, f=2 float, i=3 int64, s=4 bytes, t=5 TensorProto, floats=7, ints=8, type=20}
//     (AttributeType FLOAT=1, INT=2, STRING=3, TENSOR=4, FLOATS=6, INTS=7)
//   TensorProto{dims=1 repeated int64, data_type=2 (FLOAT=1, INT64=7), name=8, raw_data=9 (little-endian)}
//   ValueInfoProto{name=1, type=2 TypeProto{tensor_type=1 Tensor{elem_type=1, shape=2
//     TensorShapeProto{dim=1 Dimension{dim_value=1 int64, dim_param=2 string}}}}}
// Checked by onnx.checker and ONNX Runtime in ONNXExportTests.

import Foundation

public enum ONNX {
    /// The IR version and opset these models are written for.
    public static let irVersion: Int64 = 7
    public static let opset: Int64 = 13

    /// A constant tensor (an initializer, or a Constant's value): float32 or int64, row-major.
    public struct Tensor: Equatable, Sendable {
        public enum Data: Equatable, Sendable { case float([Float]), int64([Int64]) }
        public var name: String
        public var dims: [Int]
        public var data: Data
        public init(name: String, dims: [Int], floats: [Float]) { self.name = name; self.dims = dims; data = .float(floats) }
        public init(name: String, dims: [Int], ints: [Int64]) { self.name = name; self.dims = dims; data = .int64(ints) }

        var proto: ProtobufWriter {
            var w = ProtobufWriter()
            w.packedInts(1, dims.map(Int64.init))
            switch data {
            case .float(let v):
                w.int(2, 1)
                w.string(8, name)
                w.bytes(9, v.flatMap { TFRecord.littleEndian($0.bitPattern) })
            case .int64(let v):
                w.int(2, 7)
                w.string(8, name)
                w.bytes(9, v.flatMap { TFRecord.littleEndian(UInt64(bitPattern: $0)) })
            }
            return w
        }
    }

    public enum Attribute: Equatable, Sendable {
        case int(String, Int)
        case ints(String, [Int])
        case float(String, Float)
        case string(String, String)
        case tensor(String, Tensor)

        var proto: ProtobufWriter {
            var w = ProtobufWriter()
            switch self {
            case let .int(n, v): w.string(1, n); w.int(3, Int64(v)); w.int(20, 2)
            case let .ints(n, v): w.string(1, n); w.packedInts(8, v.map(Int64.init)); w.int(20, 7)
            case let .float(n, v): w.string(1, n); w.float(2, v); w.int(20, 1)
            case let .string(n, v): w.string(1, n); w.string(4, v); w.int(20, 3)
            case let .tensor(n, v): w.string(1, n); w.message(5, v.proto); w.int(20, 4)
            }
            return w
        }
    }

    public struct Node: Equatable, Sendable {
        public var opType: String
        public var name: String
        public var inputs: [String]
        public var outputs: [String]
        public var attributes: [Attribute]
        public init(_ opType: String, name: String, inputs: [String], outputs: [String], attributes: [Attribute] = []) {
            self.opType = opType; self.name = name; self.inputs = inputs; self.outputs = outputs; self.attributes = attributes
        }

        var proto: ProtobufWriter {
            var w = ProtobufWriter()
            for i in inputs { w.string(1, i) }
            for o in outputs { w.string(2, o) }
            w.string(3, name)
            w.string(4, opType)
            for a in attributes { w.message(5, a.proto) }
            return w
        }
    }

    /// A graph input or output: a float tensor whose dimensions are sizes or symbolic names ("N").
    public struct ValueInfo: Equatable, Sendable {
        public enum Dim: Equatable, Sendable { case size(Int), symbol(String) }
        public var name: String
        public var dims: [Dim]
        public init(name: String, dims: [Dim]) { self.name = name; self.dims = dims }

        var proto: ProtobufWriter {
            var shape = ProtobufWriter()
            for d in dims {
                var dim = ProtobufWriter()
                switch d {
                case .size(let n): dim.int(1, Int64(n))
                case .symbol(let s): dim.string(2, s)
                }
                shape.message(1, dim)
            }
            var tensor = ProtobufWriter()
            tensor.int(1, 1)   // FLOAT
            tensor.message(2, shape)
            var type = ProtobufWriter()
            type.message(1, tensor)
            var w = ProtobufWriter()
            w.string(1, name)
            w.message(2, type)
            return w
        }
    }

    public struct Graph: Equatable, Sendable {
        public var name: String
        public var nodes: [Node] = []
        public var initializers: [Tensor] = []
        public var inputs: [ValueInfo] = []
        public var outputs: [ValueInfo] = []
        public init(name: String) { self.name = name }

        var proto: ProtobufWriter {
            var w = ProtobufWriter()
            for n in nodes { w.message(1, n.proto) }
            w.string(2, name)
            for t in initializers { w.message(5, t.proto) }
            for i in inputs { w.message(11, i.proto) }
            for o in outputs { w.message(12, o.proto) }
            return w
        }
    }

    public struct Model: Sendable {
        public var graph: Graph
        public var producerName = "espalier"
        public var producerVersion = ""
        public var docString = ""
        /// metadata_props, in order.
        public var metadata: [(key: String, value: String)] = []
        public init(graph: Graph) { self.graph = graph }

        /// The model as a .onnx file's bytes.
        public var serialized: [UInt8] {
            var w = ProtobufWriter()
            w.int(1, irVersion)
            w.string(2, producerName)
            if !producerVersion.isEmpty { w.string(3, producerVersion) }
            if !docString.isEmpty { w.string(6, docString) }
            w.message(7, graph.proto)
            var opsetID = ProtobufWriter()
            opsetID.string(1, "")
            opsetID.int(2, opset)
            w.message(8, opsetID)
            for (k, v) in metadata {
                var entry = ProtobufWriter()
                entry.string(1, k)
                entry.string(2, v)
                w.message(14, entry)
            }
            return w.bytes
        }
    }
}
