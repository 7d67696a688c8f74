// Swift views of the plain values that cross the boundary: tensor views, the run state, the
// resolved parameters given to `create`, and memory reports. Each is checked when it is made
// (NULL pointers, struct sizes, ranks, shapes), so component code never sees a malformed one.

/// A float32, contiguous, row-major view of host memory (`es_tensor_view`), valid only during
/// the call that received it. `data == nil` means a shape-only (dry-run) call.
public struct TensorView {
    /// The C view, copied (shape and data pointer).
    public let raw: es_tensor_view
    /// Number of elements (the product of the shape; 1 for rank 0).
    public let count: Int

    /// Checks and copies a C view: non-NULL, struct_size, rank in 0...8, no negative dimension.
    public init(_ pointer: UnsafePointer<es_tensor_view>?, _ what: String) throws {
        guard let pointer else { throw PluginError.invalidArgument("\(what): tensor view is NULL") }
        try checkStructSize(UnsafeRawPointer(pointer), es_tensor_view.self, what)
        try self.init(copying: pointer.pointee, what)
    }

    /// Checks a view held by value (e.g. one filled in by a host service).
    public init(copying view: es_tensor_view, _ what: String = "tensor view") throws {
        guard view.rank >= 0, view.rank <= ESPALIER_MAX_RANK else {
            throw PluginError.invalidArgument("\(what): rank \(view.rank) is outside 0...\(ESPALIER_MAX_RANK)")
        }
        var n = 1
        var shape = view.shape
        let ok = withUnsafeBytes(of: &shape) { bytes -> Bool in
            let dims = bytes.bindMemory(to: Int64.self)
            for i in 0..<Int(view.rank) {
                guard dims[i] >= 0, let d = Int(exactly: dims[i]) else { return false }
                let (p, overflow) = n.multipliedReportingOverflow(by: d)
                if overflow { return false }
                n = p
            }
            return true
        }
        guard ok else { throw PluginError.shape("\(what): shape has a negative or too large dimension") }
        raw = view
        count = n
    }

    /// The number of dimensions.
    public var rank: Int { Int(raw.rank) }

    /// The shape, outermost first.
    public var shape: [Int] { (0..<rank).map { dim($0) } }

    /// Dimension `i` (0 when `i` is outside the rank).
    public func dim(_ i: Int) -> Int {
        guard i >= 0, i < rank else { return 0 }
        var shape = raw.shape
        return withUnsafeBytes(of: &shape) { Int($0.load(fromByteOffset: i * 8, as: Int64.self)) }
    }

    /// The elements, or nil in a shape-only call.
    public var data: UnsafeMutablePointer<Float>? { raw.data }

    /// True in a shape-only (dry-run) call: compute nothing, write nothing.
    public var isShapeOnly: Bool { raw.data == nil }

    /// The elements as a buffer of `count` floats, or nil in a shape-only call.
    public var buffer: UnsafeMutableBufferPointer<Float>? {
        raw.data.map { UnsafeMutableBufferPointer(start: $0, count: count) }
    }

    /// True if both views have the same rank and dimensions.
    public func hasSameShape(as other: TensorView) -> Bool {
        rank == other.rank && (0..<rank).allSatisfy { dim($0) == other.dim($0) }
    }

    /// Throws `ES_ERROR_SHAPE` unless `other` has this view's shape.
    public func requireSameShape(as other: TensorView, _ what: String) throws {
        guard hasSameShape(as: other) else {
            throw PluginError.shape("\(what): shape \(other.shape) does not match \(shape)")
        }
    }
}

/// Where a run is (`es_run_state`), given to gates, regularizers, strategies and raw ops.
public struct RunState {
    /// True in training mode, false in evaluation.
    public var training: Bool
    /// Global step, from 0.
    public var step: Int
    /// Steps in the whole run.
    public var totalSteps: Int
    /// Epoch, from 0.
    public var epoch: Int
    /// Epochs in the whole run.
    public var totalEpochs: Int
    /// Learning rate of the weights.
    public var learningRate: Double
    /// True while predicting memory: views have no data.
    public var isDryRun: Bool

    public init(training: Bool = true, step: Int = 0, totalSteps: Int = 0, epoch: Int = 0, totalEpochs: Int = 0,
                learningRate: Double = 0, isDryRun: Bool = false) {
        self.training = training; self.step = step; self.totalSteps = totalSteps; self.epoch = epoch
        self.totalEpochs = totalEpochs; self.learningRate = learningRate; self.isDryRun = isDryRun
    }

    /// Checks and copies the host's state.
    public init(_ pointer: UnsafePointer<es_run_state>?) throws {
        guard let pointer else { throw PluginError.invalidArgument("run state is NULL") }
        try checkStructSize(UnsafeRawPointer(pointer), es_run_state.self, "run state")
        let s = pointer.pointee
        self.init(training: s.training != 0, step: Int(s.step), totalSteps: Int(s.total_steps), epoch: Int(s.epoch),
                  totalEpochs: Int(s.total_epochs), learningRate: s.learning_rate, isDryRun: s.dry_run != 0)
    }
}

/// The type of a component parameter (`ES_PARAM_*`).
public enum ParamType: Int32, Sendable {
    case bool = 1, int = 2, double = 3, string = 4, choice = 5
}

/// The resolved parameters given to `create`, looked up by name. A name the host did not pass
/// (an older host) falls back to the default the component declared.
public struct ParamValues {
    /// One resolved value.
    public struct Value {
        public var type: ParamType
        /// INT, BOOL (0/1).
        public var int: Int64
        /// DOUBLE (and INT, converted).
        public var double: Double
        /// Every type: the value as text.
        public var text: String

        public init(type: ParamType, int: Int64, double: Double, text: String) {
            self.type = type; self.int = int; self.double = double; self.text = text
        }
    }

    private var values: [String: Value]
    /// Names in the order the host gave them.
    public private(set) var names: [String]

    /// Builds values from Swift (for tests, or a component that builds another).
    public init(_ values: [String: Value] = [:]) {
        self.values = values
        self.names = values.keys.sorted()
    }

    /// Copies the host's array (its strings are valid only during `create`), then adds declared
    /// defaults for names the host did not pass.
    init(_ pointer: UnsafePointer<es_param_value>?, count: UInt32, declared: [ParamSpec]) throws {
        values = [:]
        names = []
        if count > 0 {
            guard let pointer else { throw PluginError.invalidArgument("param_count is \(count) but params is NULL") }
            var p = UnsafeRawPointer(pointer)
            for i in 0..<Int(count) {
                // Each element's own struct_size says how far to step (a newer host's may be larger).
                let size = Int(p.load(as: UInt32.self))
                try checkStructSize(p, es_param_value.self, "parameter #\(i)")
                let v = p.load(as: es_param_value.self)
                guard let namePointer = v.name else { throw PluginError.invalidArgument("parameter #\(i) has no name") }
                let name = String(cString: namePointer)
                let type = ParamType(rawValue: v.type) ?? .string
                values[name] = Value(type: type, int: v.int_value, double: v.double_value, text: stringOrEmpty(v.text))
                names.append(name)
                // Elements are laid out as a C array of the writer's struct; the host is compiled
                // with the same header, so its stride is its struct_size rounded to alignment.
                let align = MemoryLayout<es_param_value>.alignment
                p += (size + align - 1) / align * align
            }
        }
        for spec in declared where values[spec.name] == nil {
            values[spec.name] = spec.defaultValue
            names.append(spec.name)
        }
    }

    /// The value named `name`, if any.
    public subscript(name: String) -> Value? { values[name] }

    /// True if `name` has a value.
    public func has(_ name: String) -> Bool { values[name] != nil }

    private func require(_ name: String) throws -> Value {
        guard let v = values[name] else {
            throw PluginError.invalidArgument("no parameter '\(name)' (have: \(names.joined(separator: ", ")))")
        }
        return v
    }

    /// An INT or BOOL parameter (a DOUBLE with an integral value is accepted too).
    public func int(_ name: String) throws -> Int {
        let v = try require(name)
        switch v.type {
        case .int, .bool: return Int(v.int)
        case .double:
            if let i = Int(exactly: v.double) { return i }
            throw PluginError.invalidArgument("parameter '\(name)' = \(v.double) is not an integer")
        default:
            if let i = Int(v.text) { return i }
            throw PluginError.invalidArgument("parameter '\(name)' = '\(v.text)' is not an integer")
        }
    }

    /// A DOUBLE or INT parameter.
    public func double(_ name: String) throws -> Double {
        let v = try require(name)
        switch v.type {
        case .double: return v.double
        case .int, .bool: return Double(v.int)
        default:
            if let d = Double(v.text) { return d }
            throw PluginError.invalidArgument("parameter '\(name)' = '\(v.text)' is not a number")
        }
    }

    /// A BOOL parameter.
    public func bool(_ name: String) throws -> Bool {
        let v = try require(name)
        switch v.type {
        case .bool, .int: return v.int != 0
        default:
            switch v.text.lowercased() {
            case "true", "1", "yes", "on": return true
            case "false", "0", "no", "off": return false
            default: throw PluginError.invalidArgument("parameter '\(name)' = '\(v.text)' is not true or false")
            }
        }
    }

    /// Any parameter as text (STRING and CHOICE parameters are read this way).
    public func string(_ name: String) throws -> String { try require(name).text }
}

/// Memory categories of the accountant (`ES_MEM_*`).
public enum MemoryCategory: Int32, CaseIterable, Sendable {
    case parameters = 0, gradients = 1, optimizerState = 2, activations = 3, activationGradients = 4, workspace = 5, data = 6
}

/// Bytes held by category, now and at the peak (`es_memory_report`).
public struct MemoryReport {
    /// Indexed by `MemoryCategory.rawValue`.
    public var current: [UInt64]
    /// Bytes by category at the moment of the peak.
    public var atPeak: [UInt64]
    /// Sum of `current`.
    public var currentTotal: UInt64
    /// The highest total so far.
    public var peakTotal: UInt64
    /// 0 = no budget.
    public var budget: UInt64

    init(_ r: es_memory_report) {
        var c = r.current, p = r.at_peak
        current = withUnsafeBytes(of: &c) { Array($0.bindMemory(to: UInt64.self)) }
        atPeak = withUnsafeBytes(of: &p) { Array($0.bindMemory(to: UInt64.self)) }
        currentTotal = r.current_total
        peakTotal = r.peak_total
        budget = r.budget
    }

    /// A zeroed C report with struct_size set, for a host service to fill.
    static func emptyC() -> es_memory_report {
        var r = es_memory_report()
        r.struct_size = UInt32(MemoryLayout<es_memory_report>.size)
        return r
    }
}
