# Reads what another publisher wrote, as the Ruby gem's server would, with the `redis` gem.
#
#   ruby read.rb REDIS_URL CHANNEL COUNT
#
# Subscribes to CHANNEL, prints "subscribed" once the subscription is confirmed, waits (20 s at
# most) for COUNT pub/sub messages, then prints one JSON object: the messages, the counter, the
# channel's history (entries with their scores), and what the gem's server would send a client
# resuming from the first message's id.
require "json"
require_relative "gem_layout"

url, channel, count = ARGV.fetch(0), ARGV.fetch(1), Integer(ARGV.fetch(2))
messages = []
subscriber = Redis.new(url: url)
subscriber.subscribe_with_timeout(20, channel) do |on|
  on.subscribe do
    puts "subscribed"
    $stdout.flush
  end
  on.message do |_channel, payload|
    messages << payload
    subscriber.unsubscribe if messages.size == count
  end
end

redis = Redis.new(url: url)
first_id = messages.first[/\Aid: (\d+)\n/, 1].to_i
missed, resumed = GemLayout.resume(redis, [channel], first_id)
puts JSON.generate(
  "messages" => messages,
  "counter" => redis.get(GemLayout::COUNTER),
  "history" => redis.zrange(channel, 0, -1, with_scores: true).map { |text, score| [text, score.to_i] },
  "resume_from_first" => { "missedevents" => missed, "events" => resumed }
)
