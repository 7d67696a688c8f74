// Dynamic methods: plugin functions whose C signature is declared as data ("double(int64,int64)")
// and called through libffi. The signature is parsed and checked when the plugin loads; a call
// converts Swift values to the declared C types and back.
// Not here: callbacks from C into Swift (closures), structs by value, variadic functions.

import CFFI
import Foundation

/// A C type a dynamic method may use.
public enum FFIType: String, CaseIterable, Sendable {
    case void, int32, int64, uint32, uint64, float, double, pointer, string

    var ffiType: UnsafeMutablePointer<ffi_type> {
        switch self {
        case .void: return withUnsafeMutablePointer(to: &ffi_type_void) { $0 }
        case .int32: return withUnsafeMutablePointer(to: &ffi_type_sint32) { $0 }
        case .int64: return withUnsafeMutablePointer(to: &ffi_type_sint64) { $0 }
        case .uint32: return withUnsafeMutablePointer(to: &ffi_type_uint32) { $0 }
        case .uint64: return withUnsafeMutablePointer(to: &ffi_type_uint64) { $0 }
        case .float: return withUnsafeMutablePointer(to: &ffi_type_float) { $0 }
        case .double: return withUnsafeMutablePointer(to: &ffi_type_double) { $0 }
        case .pointer, .string: return withUnsafeMutablePointer(to: &ffi_type_pointer) { $0 }
        }
    }
}

/// A parsed signature: `RET(ARG,ARG,…)`.
public struct FFISignature: Equatable, Sendable, CustomStringConvertible {
    public let returnType: FFIType
    public let arguments: [FFIType]

    /// Parses the grammar of espalier_abi.h; the error says what is wrong and what is allowed.
    public init(parsing text: String) throws {
        let t = text.replacingOccurrences(of: " ", with: "")
        let allowed = FFIType.allCases.map(\.rawValue).joined(separator: ", ")
        guard let open = t.firstIndex(of: "("), t.hasSuffix(")"), t.filter({ $0 == "(" }).count == 1, t.filter({ $0 == ")" }).count == 1 else {
            throw FFIError.malformed("signature '\(text)' is not of the form RET(ARG,…), e.g. double(int64,int64)")
        }
        let retName = String(t[..<open])
        guard let ret = FFIType(rawValue: retName) else {
            throw FFIError.malformed("signature '\(text)': unknown return type '\(retName)' (allowed: \(allowed))")
        }
        let inner = t[t.index(after: open)..<t.index(before: t.endIndex)]
        var args: [FFIType] = []
        if !inner.isEmpty {
            for part in inner.split(separator: ",", omittingEmptySubsequences: false) {
                guard let a = FFIType(rawValue: String(part)), a != .void else {
                    throw FFIError.malformed("signature '\(text)': bad argument type '\(part)' (allowed: \(allowed.replacingOccurrences(of: "void, ", with: "")))")
                }
                args.append(a)
            }
        }
        guard args.count <= 16 else { throw FFIError.malformed("signature '\(text)' has more than 16 arguments") }
        returnType = ret
        arguments = args
    }

    public var description: String { "\(returnType.rawValue)(\(arguments.map(\.rawValue).joined(separator: ",")))" }
}

public enum FFIError: Error, CustomStringConvertible, Equatable {
    case malformed(String)
    case call(String)
    public var description: String {
        switch self {
        case .malformed(let s): return s
        case .call(let s): return s
        }
    }
}

/// A value passed to or returned from a dynamic method.
public enum FFIValue: Equatable, CustomStringConvertible {
    case void
    case int(Int64)
    case uint(UInt64)
    case double(Double)
    case pointer(UnsafeMutableRawPointer?)
    case string(String?)

    public var description: String {
        switch self {
        case .void: return "void"
        case .int(let v): return "\(v)"
        case .uint(let v): return "\(v)"
        case .double(let v): return "\(v)"
        case .pointer(let p): return p.map { "\($0)" } ?? "NULL"
        case .string(let s): return s.map { "\"\($0)\"" } ?? "NULL"
        }
    }

    public var doubleValue: Double? {
        switch self {
        case .int(let v): return Double(v)
        case .uint(let v): return Double(v)
        case .double(let v): return v
        default: return nil
        }
    }
}

/// A plugin function with a declared signature, callable through libffi.
public final class DynamicMethod {
    public let slot: String
    public let name: String
    public let doc: String
    public let signature: FFISignature
    let function: UnsafeRawPointer
    private var cif = ffi_cif()
    private let argTypes: UnsafeMutablePointer<UnsafeMutablePointer<ffi_type>?>

    init(slot: String, name: String, doc: String, signature: FFISignature, function: UnsafeRawPointer) throws {
        self.slot = slot
        self.name = name
        self.doc = doc
        self.signature = signature
        self.function = function
        argTypes = .allocate(capacity: max(1, signature.arguments.count))
        for (i, a) in signature.arguments.enumerated() { argTypes[i] = a.ffiType }
        let status = ffi_prep_cif(&cif, FFI_DEFAULT_ABI, UInt32(signature.arguments.count), signature.returnType.ffiType, argTypes)
        guard status == FFI_OK else {
            argTypes.deallocate()
            throw FFIError.malformed("libffi could not prepare a call of \(signature) (status \(status.rawValue))")
        }
    }

    deinit { argTypes.deallocate() }

    /// "slot=name" as a user selects it.
    public var selector: String { "\(slot)=\(name)" }

    /// Calls the function. Arguments are converted to the declared types (an integer may be given
    /// for a double and the other way round only when exact).
    public func call(_ args: [FFIValue]) throws -> FFIValue {
        guard args.count == signature.arguments.count else {
            throw FFIError.call("\(selector) takes \(signature.arguments.count) argument(s) \(signature), got \(args.count)")
        }
        // One 8-byte slot per argument (enough for every supported type), plus C strings kept alive.
        let slots = UnsafeMutablePointer<UInt64>.allocate(capacity: max(1, args.count))
        defer { slots.deallocate() }
        var cStrings: [UnsafeMutablePointer<CChar>] = []
        defer { cStrings.forEach { free($0) } }
        let values = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: max(1, args.count))
        defer { values.deallocate() }
        for (i, (type, value)) in zip(signature.arguments, args).enumerated() {
            let raw = UnsafeMutableRawPointer(slots + i)
            switch (type, value) {
            case (.int32, .int(let v)):
                guard let x = Int32(exactly: v) else { throw FFIError.call("argument \(i + 1) of \(selector): \(v) does not fit int32") }
                raw.storeBytes(of: x, as: Int32.self)
            case (.int64, .int(let v)): raw.storeBytes(of: v, as: Int64.self)
            case (.uint32, .int(let v)):
                guard let x = UInt32(exactly: v) else { throw FFIError.call("argument \(i + 1) of \(selector): \(v) does not fit uint32") }
                raw.storeBytes(of: x, as: UInt32.self)
            case (.uint32, .uint(let v)):
                guard let x = UInt32(exactly: v) else { throw FFIError.call("argument \(i + 1) of \(selector): \(v) does not fit uint32") }
                raw.storeBytes(of: x, as: UInt32.self)
            case (.uint64, .uint(let v)): raw.storeBytes(of: v, as: UInt64.self)
            case (.uint64, .int(let v)):
                guard let x = UInt64(exactly: v) else { throw FFIError.call("argument \(i + 1) of \(selector): \(v) is negative") }
                raw.storeBytes(of: x, as: UInt64.self)
            case (.float, _):
                guard let d = value.doubleValue else { throw FFIError.call("argument \(i + 1) of \(selector) must be a number") }
                raw.storeBytes(of: Float(d), as: Float.self)
            case (.double, _):
                guard let d = value.doubleValue else { throw FFIError.call("argument \(i + 1) of \(selector) must be a number") }
                raw.storeBytes(of: d, as: Double.self)
            case (.pointer, .pointer(let p)): raw.storeBytes(of: p, as: UnsafeMutableRawPointer?.self)
            case (.string, .string(let s)):
                let c = s.map { strdup($0)! }
                if let c { cStrings.append(c) }
                raw.storeBytes(of: c, as: UnsafeMutablePointer<CChar>?.self)
            default:
                throw FFIError.call("argument \(i + 1) of \(selector): \(value) is not a \(type.rawValue)")
            }
            values[i] = raw
        }
        var ret: (UInt64, UInt64) = (0, 0)   // ffi_arg-sized (and larger) return slot
        return try withUnsafeMutableBytes(of: &ret) { r -> FFIValue in
            let fn = unsafeBitCast(function, to: (@convention(c) () -> Void).self)
            ffi_call(&cif, fn, r.baseAddress, values)
            let base = r.baseAddress!
            switch signature.returnType {
            case .void: return .void
            // Integer returns narrower than a register come back widened to ffi_arg (64 bits).
            case .int32: return .int(Int64(Int32(truncatingIfNeeded: base.load(as: Int64.self))))
            case .int64: return .int(base.load(as: Int64.self))
            case .uint32: return .uint(UInt64(UInt32(truncatingIfNeeded: base.load(as: UInt64.self))))
            case .uint64: return .uint(base.load(as: UInt64.self))
            case .float: return .double(Double(base.load(as: Float.self)))
            case .double: return .double(base.load(as: Double.self))
            case .pointer: return .pointer(base.load(as: UnsafeMutableRawPointer?.self))
            case .string:
                let p = base.load(as: UnsafePointer<CChar>?.self)
                return .string(p.map { String(cString: $0) })
            }
        }
    }

    /// Convenience for the common schedule shape `double(int64,int64)`.
    public func schedule(step: Int, total: Int) throws -> Double {
        guard signature == (try FFISignature(parsing: "double(int64,int64)")) else {
            throw FFIError.call("\(selector) is \(signature), not a schedule double(int64,int64)")
        }
        return try call([.int(Int64(step)), .int(Int64(total))]).doubleValue ?? .nan
    }
}
