# The Ruby gem Redisse's Redis layout, written again for the interoperability tests
# (tests/it/ruby_interop.rs) with the `redis` gem: what its publisher writes and what its
# server reads. Each step is the gem's, in its order, with no script and no transaction.
require "redis"

module GemLayout
  COUNTER = "redisse:lastEventId"
  HISTORY_SIZE = 100

  module_function

  # The gem's SSE text of a published event: id, event and data lines, data split on "\n"
  # only, and a blank line.
  def sse(data, type:, id:)
    "id: #{id}\nevent: #{type}\ndata: #{data.to_s.gsub("\n", "\ndata: ")}\n\n"
  end

  # The gem's publisher: four commands, one after the other.
  def publish(redis, channel, data, type: "message", history_size: HISTORY_SIZE)
    id = redis.incr(COUNTER)
    event = sse(data, type: type, id: id)
    redis.publish(channel, event)
    redis.zadd(channel, id, event)
    redis.zremrangebyrank(channel, 0, -(history_size + 1))
    id
  end

  # What the gem's server sends a client that resumes from `last_id` on `channels`: every
  # history entry from `last_id` on (inclusive), in score order; the entry at `last_id` itself
  # is dropped (the client has it), and when it is not there, `missedevents` comes first.
  # Returns [missed, [[id, text], ...]].
  def resume(redis, channels, last_id)
    entries = channels.flat_map do |channel|
      redis.zrangebyscore(channel, last_id, "+inf", with_scores: true)
    end
    entries = entries.map { |text, score| [score.to_i, text] }.sort_by(&:first)
    return [false, []] if entries.empty?
    return [false, entries.drop(1)] if entries.first.first == last_id
    [true, entries]
  end
end
