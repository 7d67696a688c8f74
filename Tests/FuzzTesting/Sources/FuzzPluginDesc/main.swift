// The plugin description validator: PluginLoader.validate(description:…), the code `admit` runs
// on what a library's entry returns, fed a description built from the fuzz bytes by the shim
// below. The shim decides every size, count, kind, string, number and NULL-ness from the bytes,
// but every pointer it writes points into buffers it owns (or at a do-nothing function), so
// only the validator's reading of the description is under test. No plugin code ever runs
// (init is always NULL; function pointers are only checked for NULL).

import CEspalierSDK
import EspalierHost
import FuzzCommon

/// Takes values from the input, front to back; zeros once it is used up.
struct ByteReader {
    let bytes: [UInt8]
    var at = 0
    mutating func u8() -> UInt8 {
        guard at < bytes.count else { return 0 }
        defer { at += 1 }
        return bytes[at]
    }
    mutating func u32() -> UInt32 { (0..<4).reduce(0) { acc, i in acc | UInt32(u8()) << (8 * UInt32(i)) } }
    mutating func u64() -> UInt64 { UInt64(u32()) | UInt64(u32()) << 32 }
    /// A struct_size: mostly the true size, else something near it, else anything.
    mutating func size(_ trueSize: Int) -> UInt32 {
        let s = u8()
        if s < 200 { return UInt32(trueSize) }
        if s < 240 { return u32() % UInt32(trueSize + 16) }
        return u32()
    }
    mutating func double() -> Double {
        switch u8() % 5 {
        case 0: return 0
        case 1: return Double(Int8(bitPattern: u8()))
        case 2: return Double(bitPattern: u64())
        case 3: return [Double.infinity, -.infinity, .nan, .greatestFiniteMagnitude, -.greatestFiniteMagnitude, 1e15][Int(u8() % 6)]
        default: return Double(Int32(bitPattern: u32()))
        }
    }
}

/// Strings the shim picks by number (selector 1…tokens.count), so the fuzzer reaches valid
/// descriptions quickly; selector 0 is NULL and larger selectors take raw bytes from the input.
let tokens = [
    "espalier.op.fuzz/1", "espalier.gate.fuzz/1", "espalier.regularizer.fuzz/1", "espalier.strategy.fuzz/1", "org.example.op.a-b_c/2",
    "espalier.fuzz", "1.0.0", "a summary", "tau", "lr", "mode", "steps.max",
    "true", "false", "0", "1", "-3", "2.5", "1e308", "nan", "a|b|c", "a", "",
    "double(int64,int64)", "void()", "int32(pointer,string)", "float(float,double,uint32,uint64)", "void(void)",
    "tau.schedule", "linear-decay",
]

/// Every buffer the shim allocates, freed after the input is done.
final class Arena {
    var blocks: [UnsafeMutableRawPointer] = []
    func allocate(_ bytes: Int, alignment: Int = 16) -> UnsafeMutableRawPointer {
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 1), alignment: alignment)
        p.initializeMemory(as: UInt8.self, repeating: 0, count: max(bytes, 1))
        blocks.append(p)
        return p
    }
    func cString(_ bytes: [UInt8]) -> UnsafePointer<CChar> {
        let p = allocate(bytes.count + 1)
        bytes.withUnsafeBytes { if !$0.isEmpty { p.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
        return UnsafePointer(p.assumingMemoryBound(to: CChar.self))
    }
    func array<T>(_ count: Int, of: T.Type) -> UnsafeMutablePointer<T> {
        allocate(count * MemoryLayout<T>.stride, alignment: MemoryLayout<T>.alignment).bindMemory(to: T.self, capacity: max(count, 1))
    }
    deinit { for b in blocks { b.deallocate() } }
}

/// A function that is never called: the non-NULL value of every function pointer.
let neverCalled: @convention(c) () -> Void = { fatalError("the validator called a plugin function") }
let neverCalledAddress = UInt(bitPattern: unsafeBitCast(neverCalled, to: UnsafeRawPointer.self))

struct Shim {
    var r: ByteReader
    let arena = Arena()

    mutating func string() -> UnsafePointer<CChar>? {
        let s = r.u8()
        if s == 0 { return nil }
        if Int(s) <= tokens.count { return arena.cString(Array(tokens[Int(s) - 1].utf8)) }
        let n = Int(r.u8() % 48)
        return arena.cString((0..<n).map { _ in r.u8() })
    }

    /// A count and a pointer: an owned array of `s % max` elements (selector s < 128), else no
    /// elements with NULL, and (s = 255) any count with NULL.
    mutating func list<T>(_ type: T.Type, max: UInt8, make: (inout Shim) -> T) -> (UnsafePointer<T>?, UInt32) {
        let s = r.u8()
        if s >= 128 { return (nil, s == 255 ? r.u32() : 0) }
        let n = Int(s % max)
        let p = arena.array(n, of: T.self)
        for i in 0..<n { (p + i).initialize(to: make(&self)) }
        return (UnsafePointer(p), UInt32(n))
    }

    mutating func param() -> es_param_desc {
        es_param_desc(struct_size: r.size(MemoryLayout<es_param_desc>.size), type: es_param_type(r.u8() % 7), name: string(),
                      default_value: string(), doc: string(), choices: string(), min_value: r.double(), max_value: r.double())
    }

    mutating func method() -> es_dynamic_method_desc {
        es_dynamic_method_desc(struct_size: r.size(MemoryLayout<es_dynamic_method_desc>.size), slot: string(), name: string(),
                               signature: string(), doc: string(), function: r.u8() % 4 == 0 ? nil : neverCalled)
    }

    /// A kind's table: NULL, or 512 owned bytes whose 8-byte words are NULL or `neverCalled`,
    /// with struct_size and the gate's / strategy's flag words from the input.
    mutating func vtable(kind: es_kind) -> UnsafeRawPointer? {
        let s = r.u8()
        if s % 8 == 0 { return nil }
        let bytes = 512
        let p = arena.allocate(bytes)
        let mask = r.u32()
        for w in 1..<(bytes / 8) where mask >> UInt32((w - 1) % 32) & 1 == 1 {
            p.storeBytes(of: neverCalledAddress, toByteOffset: 8 * w, as: UInt.self)
        }
        let trueSize: Int
        switch kind {
        case ES_KIND_OP: trueSize = MemoryLayout<es_op_vtable>.size
        case ES_KIND_GATE:
            trueSize = MemoryLayout<es_gate_vtable>.size
            p.storeBytes(of: r.u32(), toByteOffset: MemoryLayout<es_gate_vtable>.offset(of: \.flags)!, as: UInt32.self)
            p.storeBytes(of: r.u32(), toByteOffset: MemoryLayout<es_gate_vtable>.offset(of: \.granularities)!, as: UInt32.self)
        case ES_KIND_REGULARIZER: trueSize = MemoryLayout<es_regularizer_vtable>.size
        case ES_KIND_STRATEGY:
            trueSize = MemoryLayout<es_strategy_vtable>.size
            p.storeBytes(of: r.u32(), toByteOffset: MemoryLayout<es_strategy_vtable>.offset(of: \.requires)!, as: UInt32.self)
        default: trueSize = 64
        }
        precondition(trueSize <= bytes)
        p.storeBytes(of: r.size(trueSize), as: UInt32.self)
        return UnsafeRawPointer(p)
    }

    mutating func component() -> es_component_desc {
        let size = r.size(MemoryLayout<es_component_desc>.size)
        let kind = es_kind(r.u8() % 6)
        let id = string(), summary = string()
        let (params, paramCount) = list(es_param_desc.self, max: 6) { $0.param() }
        let (methods, methodCount) = list(es_dynamic_method_desc.self, max: 3) { $0.method() }
        return es_component_desc(struct_size: size, kind: kind, id: id, summary: summary, params: params, param_count: paramCount,
                                 methods: methods, method_count: methodCount, vtable: vtable(kind: kind), user_data: nil, method: nil)
    }

    mutating func plugin() -> UnsafeRawPointer {
        let desc = arena.array(1, of: es_plugin_desc.self)
        let size = r.size(MemoryLayout<es_plugin_desc>.size)
        let major = r.u8() < 250 ? UInt32(ESPALIER_ABI_MAJOR) : r.u32()
        let minor = UInt32(r.u8() % 6)
        let name = string(), version = string(), summary = string()
        let (components, count) = list(es_component_desc.self, max: 5) { $0.component() }
        desc.initialize(to: es_plugin_desc(struct_size: size, abi: es_version(major: major, minor: minor), name: name, version: version,
                                           summary: summary, init: nil, components: components, component_count: count))
        return UnsafeRawPointer(desc)
    }
}

let fakeHandle = UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 1)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPluginDesc(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    var shim = Shim(r: ByteReader(bytes: FuzzInput.bytes(start, count)))
    let desc = shim.plugin()
    let registry = PluginRegistry()
    // The host's minimum minor, from the input too (normally 0).
    let minimumMinor = UInt32(shim.r.u8() % 4)
    guard let (library, _) = FuzzInput.attempt("validate", {
        try PluginLoader.validate(description: desc, path: "libespalier-fuzz.so", handle: fakeHandle, minimumMinor: minimumMinor, registry: registry)
    }) else { return 0 }
    // What listings and `--set` do with an admitted description.
    for c in library.components {
        _ = c.form
        _ = c.shortName
        _ = c.revision
        for p in c.params {
            let text = shim.string().map { String(cString: $0) } ?? p.defaultValue
            _ = try? p.parse(text)
        }
        for m in c.methods { _ = m.signature.description }
    }
    return 0
}
